"""The imports a controller sees: ``edgeagent:controller/{k8s,timer,log}`` (see controllers/wit/)."""
