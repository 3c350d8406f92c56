"""Workflows: what runs stages. The study runs every stage over its manifest's cells; a reproduction reruns one
tracked cell with its stage. Stages (``medxfer.stages``) never import each other or a workflow."""
