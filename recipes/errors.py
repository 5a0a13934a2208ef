class RecipeError(Exception):
    """Bad input or configuration: reported as one line, without a traceback."""
