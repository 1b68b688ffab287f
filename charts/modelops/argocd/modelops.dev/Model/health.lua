-- Argo CD health of a modelops.dev Model.
-- Healthy: Ready is True (a version is Ready). Degraded: its credentials Secret or one of
-- its keys is missing. Anything else (no Ready version yet) is Progressing.
local hs = {}

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
  hs.message = ready.message or ready.reason
elseif ready.reason == "CredentialsNotFound" then
  hs.status = "Degraded"
  hs.message = ready.message or ready.reason
else
  hs.status = "Progressing"
  hs.message = ready.message or ready.reason
end
return hs
