"""Planning layer (torch-free): datasets, profiles, notices, the records a run writes, the
order choice, the planning rules, past evidence, the planner and compose's plan.

Imports only the spec layer (`defcon.*` top level and `defcon.checker`).
"""
