"""Examples: the record schema (schema.py), the shipped corpora and built-in recipes (corpora.py), and loading
by name with caching (load.py). The names most callers need are importable from here."""

from uav_cache.examples.corpora import RECIPES, build
from uav_cache.examples.load import load_examples
from uav_cache.examples.schema import SPLITS, TASKS, ExampleSet, check_example

__all__ = ["RECIPES", "SPLITS", "TASKS", "ExampleSet", "build", "check_example", "load_examples"]
