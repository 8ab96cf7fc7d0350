"""Tiny random-weight models of every architecture, built once per test session."""

from __future__ import annotations

import os

# Built locally and loaded from disk only; a hub lookup would be a bug, so make it fail loudly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest

from gpu_inference.registry import LoadedModel, ModelRegistry
from gpu_inference.tiny import create_tiny_models
from services.generation.catalog import ModelCatalog, ModelFolder


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding every tiny model (`gpu_inference.tiny.create_tiny_models`). Tests
    must not modify it."""
    directory = tmp_path_factory.mktemp("models")
    create_tiny_models(directory)
    return directory


@pytest.fixture(scope="session")
def catalog(models_dir: Path) -> ModelCatalog:
    return ModelCatalog(ModelFolder(models_dir))


@pytest.fixture(scope="session")
async def tiny_model(catalog: ModelCatalog) -> LoadedModel:
    """`tiny-sd`, loaded once through the registry, for tests that only run inference."""
    return await ModelRegistry(catalog).acquire("tiny-sd")
