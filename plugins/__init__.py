"""First-party jemkit plugins (installed as the ``jemkit_plugins`` package).

Each module registers its components through the same hooks a third-party plugin uses.
"""
