"""Prompt-based adaptation recipes.

- `visual`: recipe ``kind: visual_prompt`` (seed 000 ch. 6), visual prompts + label mapping;
  `visual_report` writes its tables and figures.
"""
