"""Where the files powerplane ships live (no imports: every process's parser reads these)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_SITE = ROOT / "deploy" / "sites" / "demo.toml"
