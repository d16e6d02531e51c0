-- Argo CD health check of streamjob.io/StreamJob (install: gitops/README.md; tests:
-- tests/gitops/test.sh). Reads only status, as the operator writes it: phase, the Ready
-- condition, message and observedGeneration. Pure: `obj` in, `hs` {status, message} out.
local hs = {}

local function condition(status, type)
  if status.conditions == nil then return nil end
  for _, c in ipairs(status.conditions) do
    if c.type == type then return c end
  end
  return nil
end

-- The first argument that is neither nil nor "" (nil arguments included: no ipairs).
local function nonempty(...)
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if v ~= nil and v ~= "" then return v end
  end
  return nil
end

local st = obj.status
if st == nil or (st.phase == nil and st.observedGeneration == nil) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the StreamJob"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (st.observedGeneration == nil or st.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation) ..
    " (status describes " .. tostring(st.observedGeneration or "none") .. ")"
  return hs
end

local ready = condition(st, "Ready")
local progressing = condition(st, "Progressing")
local phase = st.phase

-- An invalid spec leaves running pods alone but needs the user: Degraded, whatever the phase.
if ready ~= nil and ready.status == "False" and ready.reason == "InvalidSpec" then
  hs.status = "Degraded"
  hs.message = nonempty(st.message, ready.message, "Invalid spec")
  return hs
end

if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = nonempty(st.message, ready and ready.message, "The job failed")
  return hs
end

if phase == "Running" then
  if ready ~= nil and ready.status == "True" then
    hs.status = "Healthy"
    hs.message = nonempty(st.message, "Running")
  else
    hs.status = "Progressing"
    hs.message = nonempty(st.message, ready and ready.message, "Running, not ready yet")
  end
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = nonempty(st.message, "Suspended with a savepoint")
  return hs
end

if phase == "Finished" then
  hs.status = "Healthy"
  hs.message = "Finished: " .. (nonempty(st.message, "the bounded job completed"))
  return hs
end

if phase == "Pending" or phase == "Deploying" or phase == "Upgrading" or phase == "Restarting"
    or phase == "Suspending" or phase == "Deleting" then
  hs.status = "Progressing"
  hs.message = phase .. ": " .. (nonempty(st.message, progressing and progressing.message, "in progress"))
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown phase " .. tostring(phase)
return hs
