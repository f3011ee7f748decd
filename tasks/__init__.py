"""Dataset plugins and task specifications (installed as ``mtpeft_bench.tasks``).

Each module registers its dataset with ``@register_dataset("name")``; the registry finds them by
reading the sources, so importing this package imports no plugin.
"""
