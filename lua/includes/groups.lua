-- Utterance groups (the lingua client plays and reports TTS per group). Kept on the session
-- hash, so they survive instance restarts and work across instances:
--   grp_id      the active group ('' or absent: none, or closed by session_close)
--   grp_seq     groups this session started; ids are g-<sid>-<grp_seq>
--   grp_anchor  ms; the group's creation, moved by each tts_play_ended naming it
--   grp_part    the part_index the next result of the group gets
--   grp_ctx     the group's last parts, "User: <asr>\nTarget: <translation>", joined by "\n":
--               the job_assign's `context_text` as is; at most GROUP_PARTS parts and
--               GROUP_CHARS characters
--   grp_lens    "<grp_part>:<bytes of grp_ctx>:" and each of its parts as
--               "<bytes>.<characters>", oldest first, comma-separated: bounding the context is
--               arithmetic and one string.sub, instead of splitting it and counting the
--               characters of every part on each result. The grp_part and total it names
--               must be the record's: an earlier version rewrites grp_part and grp_ctx, never
--               grp_lens, so lengths it left behind are never used
-- A result with non-empty text_asr joins the active group unless there is none, it was
-- closed, or more than CFG.group_window ms passed since its anchor; then a new group starts.
local GROUP_PARTS, GROUP_CHARS = 8, 800
local RS = '\30' -- the part separator of grp_ctx before grp_lens (an earlier version)

-- utf8_len(s), utf8_tail(s, n): characters of a UTF-8 string; its last n characters.
local function utf8_len(s)
  return select(2, string.gsub(s, '[^\128-\191]', ''))
end

local function utf8_tail(s, n)
  local count = 0
  for i = #s, 1, -1 do
    local b = string.byte(s, i)
    if b < 128 or b >= 192 then
      count = count + 1
      if count == n then return string.sub(s, i) end
    end
  end
  return s
end

-- lens_list(lens, part, ctx): the part list of grp_lens when it describes `ctx` as written
-- with grp_part = `part` (see above), else nil.
local function lens_list(lens, part, ctx)
  local p, total, list = string.match(lens or '', '^(%d+):(%d+):(.*)$')
  if tonumber(p) == part and tonumber(total) == #ctx then return list end
  return nil
end

-- group_parts(ctx, list) -> ctx, {{bytes, chars, "bytes.chars"}...}: the stored context and
-- its parts (`list`: lens_list's, or nil). A context without matching lengths (written by an
-- earlier version: parts separated by RS, no grp_lens; or a new group it started, beside
-- stale grp_lens) is converted; one whose lengths do not add up counts as a single part.
local function group_parts(ctx, list)
  local parts = {}
  if not ctx or ctx == '' then return '', parts end
  if list and not string.find(ctx, RS, 1, true) then
    local bytes = -1
    for l, b, c in string.gmatch(list, '((%d+)%.(%d+))') do
      b = tonumber(b)
      parts[#parts + 1] = {b, tonumber(c), l}
      bytes = bytes + b + 1
    end
    if bytes == #ctx then return ctx, parts end
    parts = {}
  end
  if string.find(ctx, RS, 1, true) then
    local texts = {}
    for p in string.gmatch(ctx, '[^' .. RS .. ']+') do
      texts[#texts + 1] = p
      local c = utf8_len(p)
      parts[#parts + 1] = {#p, c, string.format('%d.%d', #p, c)}
    end
    return table.concat(texts, '\n'), parts
  end
  local c = utf8_len(ctx)
  return ctx, {{#ctx, c, string.format('%d.%d', #ctx, c)}}
end

-- group_append(ctx, lens, part, entry) -> ctx, lens: `entry` appended to the stored context
-- (grp_ctx, grp_lens written with grp_part = `part`; nil or '': none) as part `part` + 1,
-- bounded: the last GROUP_PARTS parts, then the oldest dropped while the text (a separator
-- counting one) is over GROUP_CHARS characters; the newest part alone is cut to its last
-- characters.
-- Fast path: a context of at most GROUP_CHARS bytes is within the character bound (a
-- character is at least a byte), so only the part count matters: of the lengths, only the
-- total and the oldest part's when it goes are read.
local function group_append(ctx, lens, part, entry)
  local chars = utf8_len(entry)
  local own = string.format('%d.%d', #entry, chars)
  local size = (ctx and ctx ~= '') and (#ctx + 1 + #entry) or #entry
  local list = (size > #entry) and lens_list(lens, part, ctx) or nil
  local nth = part + 1
  if size <= GROUP_CHARS then
    if size == #entry then return entry, string.format('%d:%d:%s', nth, size, own) end
    if list and not string.find(ctx, RS, 1, true) then
      local commas, at, first = 0, 0, nil
      repeat
        at = string.find(list, ',', at + 1, true)
        if at then
          commas, first = commas + 1, first or at
        end
      until not at
      if commas + 1 < GROUP_PARTS then
        return ctx .. '\n' .. entry, string.format('%d:%d:%s,%s', nth, size, list, own)
      end
      local bytes = commas + 1 == GROUP_PARTS and tonumber(string.match(list, '^(%d+)%.'))
      if bytes and bytes < #ctx and string.byte(ctx, bytes + 1) == 10 then
        return string.sub(ctx, bytes + 2) .. '\n' .. entry,
          string.format('%d:%d:%s,%s', nth, size - bytes - 1, string.sub(list, first + 1), own)
      end
    end
  end
  local parts
  ctx, parts = group_parts(ctx, list)
  local n = #parts + 1
  parts[n] = {#entry, chars, own}
  local first = math.max(1, n - GROUP_PARTS + 1)
  local total = -1
  for i = first, n do total = total + parts[i][2] + 1 end
  while total > GROUP_CHARS and first < n do
    total = total - parts[first][2] - 1
    first = first + 1
  end
  local new
  if first == n then
    new = entry
  else
    local drop = 0
    for i = 1, first - 1 do drop = drop + parts[i][1] + 1 end
    new = (drop > 0 and string.sub(ctx, drop + 1) or ctx) .. '\n' .. entry
  end
  if total > GROUP_CHARS then
    new = utf8_tail(new, GROUP_CHARS)
    return new, string.format('%d:%d:%d.%d', nth, #new, #new, GROUP_CHARS)
  end
  local out = {}
  for i = first, n do out[#out + 1] = parts[i][3] end
  return new, string.format('%d:%d:%s', nth, #new, table.concat(out, ','))
end

-- group_join(sid, asr, translated, s, set) -> group_id, part_index (nil when the session is
-- gone). `s` (optional): the session's id and grp_* fields as read earlier in this call.
-- `set` (optional): a flat list the session fields to write are appended to (the caller
-- writes them in an HSET of its own) instead of an HSET here.
local function group_join(sid, asr, translated, s, set)
  local sk = session_key(sid)
  local g = s and {s.id, s.grp_id, s.grp_anchor, s.grp_part, s.grp_ctx, s.grp_lens}
    or redis.call('HMGET', sk, 'id', 'grp_id', 'grp_anchor', 'grp_part', 'grp_ctx', 'grp_lens')
  if not g[1] then return nil end
  local gid, part = g[2], (g[4] or 0) + 0
  local entry = 'User: ' .. asr .. '\nTarget: ' .. translated
  local f
  if not gid or gid == '' or NOW - (g[3] or 0) > CFG.group_window then
    gid = 'g-' .. sid .. '-' .. redis.call('HINCRBY', sk, 'grp_seq', '1')
    local ctx, lens = group_append('', '', 0, entry)
    f = {'grp_id', gid, 'grp_anchor', NOWS, 'grp_part', '1', 'grp_ctx', ctx, 'grp_lens', lens}
    part = 0
  else
    local ctx, lens = group_append(g[5], g[6], part, entry)
    f = {'grp_part', dec(part + 1), 'grp_ctx', ctx, 'grp_lens', lens}
  end
  if set then
    local n = #set
    for i, v in ipairs(f) do set[n + i] = v end
  else
    redis.call('HSET', sk, unpack(f))
  end
  return gid, part
end

-- group_context(sess): the active group's context for job_assign `context_text` ('' when
-- there is no active group).
local function group_context(sess)
  local gid = sess.grp_id
  if not gid or gid == '' or NOW - (sess.grp_anchor or 0) > CFG.group_window then
    return ''
  end
  local ctx = sess.grp_ctx or ''
  -- stored as sent, but by an earlier version with RS between parts (until its next result)
  if string.find(ctx, RS, 1, true) then ctx = string.gsub(ctx, RS, '\n') end
  return ctx
end
