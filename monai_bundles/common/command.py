"""The ``python -m monai.bundle run`` command line: built in one place (tests, demo, benchmarks)
by ``bundle_run_command``, and its overrides checked against the configs' keys by
``check_overrides`` (called from each bundle's ``initialize``)."""

import ast
import difflib
import os
import sys
from typing import Dict, List, Mapping, Optional, Sequence

from sslseg.errors import InputError


def bundle_run_command(
    config_files: Sequence[str],
    overrides: Optional[Mapping[str, object]] = None,
    launcher: Sequence[str] = (sys.executable,),
) -> list:
    """``[*launcher, -m, monai.bundle, run, --config_file, F, --key, value, ...]``.

    Several config files are passed as MONAI's list syntax (later files override earlier ones).
    ``monai.bundle`` parses override values as Python literals (via ``fire``), so lists, tuples
    and dicts are written with ``repr`` and everything else with ``str`` (``True``, not ``true``).
    """
    files = [str(f) for f in config_files]
    assert files, "bundle_run_command: no config file"
    cfg = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    cmd = [*launcher, "-m", "monai.bundle", "run", "--config_file", cfg]
    for key, value in (overrides or {}).items():
        cmd += [f"--{key}", repr(value) if isinstance(value, (list, tuple, dict)) else str(value)]
    return cmd


# arguments of ``monai.bundle run`` itself (``monai.bundle.scripts.run``/``create_workflow``/
# ``ConfigWorkflow``), not config keys
RUN_ARGS = frozenset(
    {
        "run_id",
        "init_id",
        "final_id",
        "meta_file",
        "config_file",
        "logging_file",
        "tracking",
        "args_file",
        "workflow_type",
        "workflow_name",
        "properties_path",
    }
)


def _bundle_run_argv(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is that of ``python -m monai.bundle run`` (also under torchrun)."""
    main = os.path.normpath(argv[0]) if argv else ""
    return main.endswith(os.path.join("monai", "bundle", "__main__.py")) and argv[1:2] == ["run"]


def _parse_overrides(argv: Sequence[str]) -> Dict[str, str]:
    """``{key: value string}`` of the ``--key value`` / ``--key=value`` pairs of a command line
    (``fire``'s syntax: a flag without a value is ``True``, ``-`` in a key reads as ``_``)."""
    out, i = {}, 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if not tok.startswith("--") or len(tok) == 2:
            continue
        key, eq, value = tok[2:].partition("=")
        if not eq:
            if i < len(argv) and not argv[i].startswith("--"):
                value, i = argv[i], i + 1
            else:
                value = "True"
        out[key.replace("-", "_")] = value
    return out


def _as_list(value) -> List[str]:
    """A ``config_file`` argument (one path, or MONAI's ``"['a.json','b.json']"``) as a list."""
    if isinstance(value, str) and value.strip().startswith("["):
        value = ast.literal_eval(value)
    return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _ids(node, prefix: str = "") -> List[str]:
    """Every id of a nested config (``a``, ``a#b``, ``a#0#c``...)."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    out = []
    for k, v in items:
        id_ = f"{prefix}{k}"
        out.append(id_)
        if isinstance(v, (dict, list)):
            out += _ids(v, id_ + "#")
    return out


def check_overrides(
    argv: Optional[Sequence[str]] = None, accept_keys_of: Sequence[str] = ()
) -> None:
    """Refuse command-line overrides that are no key of the loaded configs (a typo such as
    ``--max_epoch 1`` would otherwise add an unused key and run the default schedule).

    Called from a bundle's ``initialize``; looks at ``sys.argv`` of ``python -m monai.bundle
    run`` (does nothing for other programs, e.g. a ``ConfigWorkflow`` built in Python). Allowed:
    ``monai.bundle run``'s own arguments (:data:`RUN_ARGS`), ids present in the merged config
    files (``a#b`` too), and new ``a#b`` ids whose parent ``a`` exists. Raises ``InputError``
    naming each unknown key and its closest config keys. ``accept_keys_of``: more config files
    whose keys are accepted too (a standalone ``inference.json`` takes the overrides of its
    ``train.json``, so one set of overrides serves both).
    """
    argv = list(sys.argv if argv is None else argv)
    if not _bundle_run_argv(argv):
        return
    from monai.bundle import ConfigParser  # here: building a command line needs no MONAI

    overrides = _parse_overrides(argv[2:])
    if "args_file" in overrides:
        from_file = ConfigParser.load_config_file(overrides["args_file"])
        overrides = {**{k: str(v) for k, v in from_file.items()}, **overrides}
    files = _as_list(overrides.get("config_file", []))
    if not files:
        return  # MONAI itself reports the missing config file
    parser = ConfigParser(ConfigParser.load_config_files([*accept_keys_of, *files]))
    unknown = [
        k
        for k in overrides
        if k not in RUN_ARGS
        and not k.startswith("_meta_")
        and k not in parser
        and not ("#" in k and k.rsplit("#", 1)[0] in parser)
    ]
    if unknown:
        ids = _ids(parser.config)
        desc = "; ".join(
            f"--{k} (close: {', '.join(difflib.get_close_matches(k, ids, n=3)) or 'none'})"
            for k in unknown
        )
        where = ", ".join([*files, *accept_keys_of])
        raise InputError(
            f"unknown bundle key(s) {desc}: not in {where}; a key is overridden only if a "
            f"config defines it (`a#b` for nested keys)"
        )
