"""Generic host modules any guest may import (log); the hardware ones are in `edgeagent.drivers.hosts`."""
