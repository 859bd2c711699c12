"""An OpenAI-compatible server over the sampler: continuous batching (`engine`), structured
output (`grammar`) and the HTTP API (`api`). It sits above the sampler and knows no memory,
environments or training."""
