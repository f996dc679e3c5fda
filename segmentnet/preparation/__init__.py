"""Data preparation (DataExtract.py): official archives, their download and checked
extraction, and the synthetic archives made in each dataset's official layout."""
