"""Files: atomic writes, the run file (export/load), the Rerun importer."""
