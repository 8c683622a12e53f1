"""Defenses: which channels to prune (RNP, ANP masks) and how B' becomes B''."""
