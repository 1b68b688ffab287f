-- Argo CD health of a modelops.dev Model.
-- Healthy: Ready is True (a version is Ready). Degraded: an object the user must create is
-- missing: its credentials Secret (or one of its keys), the ConfigMap or Secret of its CA
-- bundle (or its key), or its bucket; or its endpoint is one the operator may not reach.
-- Anything else (no Ready version yet) is Progressing.
local hs = {}

-- Reasons of Ready that only the user can fix: by creating the object the Model names, or by
-- naming an endpoint the operator may reach.
local missing = {
  CredentialsNotFound = true,
  CABundleNotFound = true,
  BucketNotFound = true,
  EndpointNotAllowed = true,
}

local function says(c)
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return c.reason
end

local status = obj.status
if status == nil or status.observedGeneration == nil or status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end

local ready = nil
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.type == "Ready" then
      ready = c
    end
  end
end

if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
elseif ready.status == "True" then
  hs.status = "Healthy"
  hs.message = says(ready)
elseif missing[ready.reason] then
  hs.status = "Degraded"
  hs.message = says(ready)
else
  hs.status = "Progressing"
  hs.message = says(ready)
end
return hs
