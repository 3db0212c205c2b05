"""The app's configuration: one schema per config group (keys and types, `schema`), the checks a schema cannot say
(values, rules across keys, `checks.check_config`), keys and options no trial reads named with the nearest real one
(`keys`), conf/'s groups and options (`options`), and the entry points' one-line config errors (`cli`).
ARCHITECTURE.md, "Configuration".

Importing this package registers what conf/ needs to compose: the schemas (Hydra's ConfigStore) and the resolvers
(`${direction:...}`, `${cwd:}`); it imports nothing else, so any module may import it.
"""

import tasks.resolvers  # noqa: F401
from tasks.config import schema  # noqa: F401
