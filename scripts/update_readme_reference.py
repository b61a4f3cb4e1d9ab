"""Regenerate the configuration table in README.md from the typed config (tests/test_cli.py checks it)."""

from pathlib import Path

from rayrl.config.loading import config_reference_markdown

readme = Path(__file__).resolve().parents[1] / "README.md"
lines = readme.read_text().split("\n")
start = lines.index("| key | type | default | description |")
end = start
while end < len(lines) and lines[end].startswith("|"):
    end += 1
lines[start:end] = config_reference_markdown().strip().split("\n")
readme.write_text("\n".join(lines))
print(f"updated {readme}")
