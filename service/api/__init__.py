"""The HTTP API: routes, their dependencies, and the steps they are made of.

- `routes`: the endpoints; `deps`: API key, caller, services (Annotated aliases);
- `accept`: checks that need settings, render, size, relay capability;
- `idempotency`: Idempotency-Key replays; `sync_send`: POST /send's delivery;
- `offload`: where blocking work of a request runs; `errors`: failures as answers;
- `middleware`, `ratelimit`, `relay`: request metrics and body limit, the token
  bucket per key, the relay's advertised extensions;
- `services`: the typed object the lifespan builds and the endpoints read.
"""
