"""Recipes: named end-to-end training pipelines (`llmasos train recipe NAME`)."""
