"""Models that live on the line: versions, deployments, operator reviews and the audit trail.

All of it sits in the records database beside the inspections (one database says which model
judged part X, who promoted it, and what the operator said), and the model files in a folder.
Torch-free: a line PC's runtime install manages its store too.
"""
