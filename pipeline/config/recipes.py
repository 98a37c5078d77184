"""Training recipes: versioned JSON files of train.py flags (`recipes/*.json`), applied by `--recipe NAME_OR_PATH`.

A recipe file is `{"description": "...", "flags": {"lr": 0.001, "koleo-global": true, ...}}`: every key of "flags"
is a train.py flag without its `--` (a switch takes true / false). `NAME` is `recipes/NAME.json` of this repository;
anything with a `/` or ending in `.json` is a path. Precedence: built-in default < recipe < `--config FILE` < flag,
so a command line that names a recipe can still change any of its values. The resolved values land in
OUTPUT/config.json with the rest of the config, and `run.recipe` names the recipe they started from.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config.schema import SECTIONS, ConfigError, flag_name, section_fields

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


def recipe_path(name: str) -> Path:
    """NAME -> recipes/NAME.json; a path (has a `/` or ends in .json) stays itself."""
    if "/" in name or name.endswith(".json"):
        return Path(name)
    return RECIPES_DIR / f"{name}.json"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.json"))


def flag_fields() -> dict[str, tuple[str, object, type]]:
    """flag name (without --) -> (section, dataclass field, base type), for every train.py flag."""
    return {flag_name(f): (section, f, tp) for section in SECTIONS for f, tp in section_fields(section)}


def read_recipe(name: str) -> dict:
    """The recipe's flags {flag: value}; ConfigError naming the file for a missing file, bad JSON or layout."""
    path = recipe_path(name)
    if not path.is_file():
        known = ", ".join(recipe_names()) or "none"
        raise ConfigError(f"--recipe {name}: no such recipe ({path} does not exist; recipes in {RECIPES_DIR}: {known})")
    try:
        raw = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"--recipe {path}: cannot parse: {e}") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("flags"), dict) or set(raw) - {"description", "flags"}:
        raise ConfigError(f'--recipe {path}: expected {{"description": "...", "flags": {{flag: value}}}}')
    return raw["flags"]


def load_recipe(name: str) -> dict:
    """The recipe as config sections {section: {field: value}}; an unknown flag or a wrongly typed value is a
    ConfigError naming the file and the flag."""
    path, known, out = recipe_path(name), flag_fields(), {}
    for flag, value in read_recipe(name).items():
        if flag not in known:
            raise ConfigError(f"--recipe {path}: {flag!r} is not a train.py flag (see pipeline/train.py --help)")
        section, f, tp = known[flag]
        if (tp is bool) != isinstance(value, bool) or (tp is list and not isinstance(value, list)):
            raise ConfigError(f"--recipe {path}: {flag!r}: expected {tp.__name__}, got {value!r}")
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            raise ConfigError(f"--recipe {path}: {flag!r}: {value!r} is not one of {f.metadata['choices']}")
        out.setdefault(section, {})[f.name] = value
    return out
