"""The cohort registry: ``--cohort`` name -> the module that defines that dataset.

A cohort module declares only what is specific to its dataset, in ``COHORTS`` (name -> Cohort; one module may hold
related tasks): the roots and tables it reads, its windows (``transforms.windows.Window``; ed_cxr's stay choice:
``transforms.join.select_stay``), the per-subject selection, features, labels, split rule and output schema, and its
flag defaults. Reading tables, the per-subject CoGroupByKey, the image stage, splits,
sharded writing, rejects/metadata accounting and publishing are the shared engine (``pipeline``, ``fileio``,
``transforms``). Modules are imported on first use, so choosing one cohort never loads another's dependencies.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # the cohort modules import the engine, which imports options, which imports this registry
    from beam_pipeline.mimic import Table
    from beam_pipeline.options import Config

# --cohort name -> the module whose COHORTS holds it
MODULES = {"ed_cxr": "ed_cxr", "symile_mimic": "symile_mimic", "medfuse_ihm": "medfuse",
           "medfuse_phenotyping": "medfuse", "cxr_ehr": "cxr_ehr", "cxr_report": "cxr_report"}
NAMES: tuple[str, ...] = tuple(MODULES)
DEFAULT = "ed_cxr"


@dataclasses.dataclass(frozen=True)
class Cohort:
    name: str
    description: str  # metadata.json "dataset", the data card's title
    roots: tuple[str, ...]  # the --mimic_*_root flags it requires (--mimic_cxr_root and --output always are)
    defaults: Mapping[str, Any]  # flag defaults that differ from Config's for this cohort
    tables: Callable[[Config], list[Table]]  # the MIMIC tables it reads, given the flags
    build: Callable[..., None]  # (pipeline, config, paths, text, base, fail_when_empty): the whole graph
    funnel: Callable[[dict, dict], str]  # (counts, config) -> the CLI's funnel table
    empty_message: Callable[[dict], str]  # metadata.json of a run that wrote nothing -> why, naming the flags
    uses_text: bool = False  # needs the tokenizer, leakage rules and retrieval index (pipeline.resolve_text)
    check: Callable[[Config], list[str]] = lambda config: []  # flag problems specific to the cohort
    # (config, source) -> raise InputError for an input other than a table that is missing, checked at launch
    check_inputs: Callable[[Config, Any], None] = lambda config, source: None


def get(name: str) -> Cohort:
    if name not in NAMES:
        raise ValueError(f"unknown cohort {name!r}; choose one of {', '.join(NAMES)}")
    return importlib.import_module(f"beam_pipeline.cohorts.{MODULES[name]}").COHORTS[name]
