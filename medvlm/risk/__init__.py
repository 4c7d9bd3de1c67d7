"""Risk grading by rules kept as data (medvlm/risk/rules/<modality>.yaml)."""

from medvlm.risk.grade import LEVEL_ORDER, Rule, RuleSet, RulesError, grade, load_rules

__all__ = ["LEVEL_ORDER", "Rule", "RuleSet", "RulesError", "grade", "load_rules"]
