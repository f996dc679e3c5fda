"""What every stage shares: errors, files and JSON read safely, the config, the command line,
outputs written atomically, distributed helpers, and a trained model's description and checkpoint."""
