"""Build hook: ship the repository's top-level prompts/ and schemas/ inside the package at build time.

The top-level folders stay the one source (no second copy in git); a wheel gets them as
medvlm/_data/<kind>/, which medvlm.paths.data_dir() reads when the checkout is not there.
Everything else about the build is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
TOP_LEVEL_DATA = {"prompts": "*.yaml", "schemas": "*.json"}


class BuildPyWithData(build_py):
    """build_py, then copy each top-level data folder into <build>/medvlm/_data/<kind>."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout itself
        for kind, pattern in TOP_LEVEL_DATA.items():
            source = ROOT / kind
            files = sorted(source.glob(pattern))
            if not files:
                raise SystemExit(f"build: {source} has no {pattern} files to ship")
            target = Path(self.build_lib) / "medvlm" / "_data" / kind
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            for path in files:
                shutil.copyfile(path, target / path.name)


setup(cmdclass={"build_py": BuildPyWithData})
