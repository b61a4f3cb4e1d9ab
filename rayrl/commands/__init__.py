"""Subcommands of ``rayrl`` beyond train/config (see rayrl.cli.COMMANDS)."""
