"""Coverage-guided fuzzing of the codecs with atheris (libFuzzer for Python).

    python -m fuzz --list                              the targets
    python -m fuzz TARGET [libFuzzer flags] [DIR...]   fuzz one target until stopped
    python -m fuzz all -max_total_time=600             each target in turn, 10 minutes each
    python -m fuzz TARGET crash-FILE                   replay one input (a crash it found)

Each target's corpus lives in ``$PORTGATE_FUZZ_DIR/<target>`` (default
``~/.cache/portgate-fuzz``), seeded with the target's valid messages on first use; crashing
inputs are written to ``$PORTGATE_FUZZ_DIR/crashes/``. Needs the ``fuzz`` extra
(``pip install -e '.[fuzz]'``). See docs/fuzzing.md.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path


def fuzz_dir() -> Path:
    default = Path.home() / ".cache" / "portgate-fuzz"
    return Path(os.environ.get("PORTGATE_FUZZ_DIR", default))


def seed_corpus(name: str, seeds: tuple[bytes, ...]) -> Path:
    corpus = fuzz_dir() / name
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (corpus / f"seed-{hashlib.sha1(seed).hexdigest()}").write_bytes(seed)
    return corpus


def run_all(flags: list[str]) -> int:
    from fuzz.targets import TARGETS

    failed = []
    for name in TARGETS:
        print(f"== {name}", flush=True)
        done = subprocess.run([sys.executable, "-m", "fuzz", name, *flags], check=False)
        if done.returncode != 0:
            failed.append(name)
    if failed:
        print(f"crashes in: {', '.join(failed)} (inputs in {fuzz_dir() / 'crashes'})")
        return 1
    return 0


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2
    name, rest = argv[1], argv[2:]
    if name == "--list":
        from fuzz.targets import TARGETS

        print("\n".join(TARGETS))
        return 0
    if name == "all":
        return run_all(rest)
    import atheris  # the ``fuzz`` extra (no stubs: see [tool.mypy] overrides)

    with atheris.instrument_imports(include=["protocols", "fuzz"]):
        from fuzz.targets import TARGETS
    if name not in TARGETS:
        print(f"no target {name!r}; one of: {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    target = TARGETS[name]
    crashes = fuzz_dir() / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    flags = [
        f"-max_len={target.max_size}",
        f"-artifact_prefix={crashes}/{name}-",
        *rest,
    ]
    if not any(not arg.startswith("-") for arg in rest):
        flags.append(str(seed_corpus(name, target.seeds)))
    atheris.Setup([argv[0], *flags], target.run)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
