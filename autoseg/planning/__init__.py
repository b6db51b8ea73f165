"""Planning: fingerprint -> plan (spacing, transpose, normalization, configurations)."""
from autoseg.planning.plan_types import PLAN_VERSION, Configuration, Plan, load_plan, save_plan
from autoseg.planning.planner import plan_experiment

__all__ = ["PLAN_VERSION", "Configuration", "Plan", "load_plan", "plan_experiment", "save_plan"]
