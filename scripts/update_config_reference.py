"""Regenerate the table of every config key in docs/configuration.md from the typed config
(tests/test_cli.py checks that it is current): python scripts/update_config_reference.py"""

from pathlib import Path

from rayrl.config.loading import config_reference_markdown

doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
lines = doc.read_text().split("\n")
start = lines.index("| key | type | default | description |")
end = start
while end < len(lines) and lines[end].startswith("|"):
    end += 1
lines[start:end] = config_reference_markdown().strip().split("\n")
doc.write_text("\n".join(lines))
print(f"updated {doc}")
