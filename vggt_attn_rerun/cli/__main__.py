"""``python -m vggt_attn_rerun.cli`` runs the command line."""

from vggt_attn_rerun.cli import entry

entry()
