-- Argo CD health of a modelops.dev ModelVersion.
-- Healthy: phase Ready (compressed, gated, servable). Degraded: Rejected by the accuracy gate
-- or Failed; both are final. Anything else (Pending, Verifying, Compressing, Evaluating) is
-- Progressing, and so is a status the operator wrote for an older generation of the spec.
local hs = {}

-- What the Ready condition says: its message, or its reason when the message is empty.
local function ready_message(status)
  if status.conditions ~= nil then
    for _, c in ipairs(status.conditions) do
      if c.type == "Ready" then
        if c.message ~= nil and c.message ~= "" then
          return c.message
        end
        if c.reason ~= nil and c.reason ~= "" then
          return c.reason
        end
      end
    end
  end
  return nil
end

local status = obj.status
if status == nil or status.observedGeneration == nil or status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end
if status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end

if status.phase == "Ready" then
  hs.status = "Healthy"
elseif status.phase == "Rejected" or status.phase == "Failed" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = status.phase
local detail = ready_message(status)
if detail ~= nil then
  hs.message = status.phase .. ": " .. detail
end
return hs
