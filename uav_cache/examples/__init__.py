"""Examples: the record schema (schema.py), the shipped corpora and built-in recipes (recipes.py), and loading
by name with caching (load.py). The names most callers need are importable from here."""

from uav_cache.examples.recipes import RECIPES, build
from uav_cache.examples.load import load_examples
from uav_cache.examples.schema import (KINDS, PHRASINGS, SPLITS, TASKS, ExampleSet, check_example, qa_kind,
                                       qa_phrasing, yes_no)

__all__ = ["KINDS", "PHRASINGS", "RECIPES", "SPLITS", "TASKS", "ExampleSet", "build", "check_example", "load_examples",
           "qa_kind", "qa_phrasing", "yes_no"]
