"""Self-configuring training (`--auto true`), by stage: fingerprint.py (the dataset, measured once per
run), machine.py (this device, measured), rules.py (each choice and its reason; what Report reads of a
plan, without torch), plan.py (plan_training: the rules run in order, given settings kept)."""
