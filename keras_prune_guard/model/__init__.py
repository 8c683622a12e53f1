"""The network: graph tracing, surgery (where masks go), folding, safe loading."""
