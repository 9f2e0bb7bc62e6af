"""Built-in recipes: YAML files shipped with the package (``recipe=NAME``)."""
