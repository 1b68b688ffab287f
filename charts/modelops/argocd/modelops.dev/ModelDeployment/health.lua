-- Argo CD health of a modelops.dev ModelDeployment.
-- Healthy: the status reflects the current generation, the served version is the desired
-- one, no rollout (or canary) is under way, and Ready is True. Suspended: spec.suspended and
-- the operator has scaled every pod away. Degraded: the operator says so (a rollback, an
-- aborted canary, or a desired version it cannot serve), or a rollout passed its deadline with
-- autoRollback off. Anything else is Progressing.
local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function says(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local status = obj.status
if status == nil or status.observedGeneration == nil or status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end

local ready = condition(status, "Ready")
if obj.spec ~= nil and obj.spec.suspended == true then
  if ready ~= nil and ready.reason == "Suspended" and (status.replicas == nil or status.replicas == 0) then
    hs.status = "Suspended"
  else
    hs.status = "Progressing"
  end
  hs.message = says(ready, "Suspending")
  return hs
end

local degraded = condition(status, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = says(degraded, "Degraded")
  return hs
end

local progressing = condition(status, "Progressing")
if progressing ~= nil and progressing.status == "False" and progressing.reason == "ProgressDeadlineExceeded" then
  hs.status = "Degraded"
  hs.message = says(progressing, "ProgressDeadlineExceeded")
  return hs
end

local rolling = progressing ~= nil and progressing.status == "True"
if status.desiredVersion ~= nil and status.servedVersion == status.desiredVersion and not rolling
    and ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = says(ready, "Serving version " .. tostring(status.servedVersion))
  return hs
end

hs.status = "Progressing"
if rolling then
  hs.message = says(progressing, "Rolling out")
else
  hs.message = says(ready, "Waiting for version " .. tostring(status.desiredVersion))
end
return hs
