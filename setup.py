"""Only here because cffi's setuptools hook (cffi_modules) has no pyproject.toml form."""

from setuptools import setup

setup(cffi_modules=["csrc/build.py:ffibuilder"])
