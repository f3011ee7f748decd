"""Method plugins (installed as ``mtpeft_bench.methods``).

Each module registers its method with ``@register_method("name")``; the registry finds them by
reading the sources, so importing this package imports no plugin.
"""
