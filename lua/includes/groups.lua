-- Utterance groups (the lingua client plays and reports TTS per group). Kept on the session
-- hash, so they survive instance restarts and work across instances:
--   grp_id      the active group ('' or absent: none, or closed by session_close)
--   grp_seq     groups this session started; ids are g-<sid>-<grp_seq>
--   grp_anchor  ms; the group's creation, moved by each tts_play_ended naming it
--   grp_part    the part_index the next result of the group gets
--   grp_ctx     the group's last parts, "User: <asr>\nTarget: <translation>", separated by
--               "\30" (ASCII RS), at most GROUP_PARTS parts and GROUP_CHARS characters
-- A result with non-empty text_asr joins the active group unless there is none, it was
-- closed, or more than CFG.group_window ms passed since its anchor; then a new group starts.
local GROUP_PARTS, GROUP_CHARS = 8, 800
local RS = '\30'

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

-- group_bound(ctx): keep the last GROUP_PARTS parts, then drop the oldest while the text is
-- over GROUP_CHARS characters (the newest part alone is cut to its last characters).
local function group_bound(ctx)
  local parts = {}
  for p in string.gmatch(ctx, '[^' .. RS .. ']+') do parts[#parts + 1] = p end
  local first = math.max(1, #parts - GROUP_PARTS + 1)
  local total = 0
  for i = first, #parts do total = total + utf8_len(parts[i]) + 1 end
  while total - 1 > GROUP_CHARS and first < #parts do
    total = total - utf8_len(parts[first]) - 1
    first = first + 1
  end
  local kept = table.concat(parts, RS, first, #parts)
  if total - 1 > GROUP_CHARS then kept = utf8_tail(kept, GROUP_CHARS) end
  return kept
end

-- group_append(ctx, entry, parts): `ctx` ('' or nil: none) with `entry` appended, bounded.
-- `parts`: how many parts `ctx` holds at most. When the result has at most GROUP_PARTS parts
-- and GROUP_CHARS bytes it is within both bounds (a character is at least a byte) and is
-- returned as is, without group_bound's split and character count.
local function group_append(ctx, entry, parts)
  local new = (ctx and ctx ~= '') and (ctx .. RS .. entry) or entry
  if parts < GROUP_PARTS and #new <= GROUP_CHARS then return new end
  return group_bound(new)
end

-- group_join(sid, asr, translated, s, set) -> group_id, part_index (nil when the session is
-- gone). `s` (optional): the session's id and grp_* fields as read earlier in this call.
-- `set` (optional): a flat list the session fields to write are appended to (the caller
-- writes them in an HSET of its own) instead of an HSET here.
local function group_join(sid, asr, translated, s, set)
  local sk = session_key(sid)
  local g = s and {s.id, s.grp_id, s.grp_anchor, s.grp_part, s.grp_ctx}
    or redis.call('HMGET', sk, 'id', 'grp_id', 'grp_anchor', 'grp_part', 'grp_ctx')
  if not g[1] then return nil end
  local gid, part = g[2], tonumber(g[4] or '0')
  local entry = 'User: ' .. asr .. '\nTarget: ' .. translated
  local f
  if not gid or gid == '' or NOW - tonumber(g[3] or '0') > CFG.group_window then
    gid = 'g-' .. sid .. '-' .. redis.call('HINCRBY', sk, 'grp_seq', '1')
    f = {'grp_id', gid, 'grp_anchor', NOWS, 'grp_part', '1', 'grp_ctx', group_append('', entry, 0)}
    part = 0
  else
    f = {'grp_part', dec(part + 1), 'grp_ctx', group_append(g[5], entry, part)}
  end
  if set then
    for _, v in ipairs(f) do set[#set + 1] = v end
  else
    redis.call('HSET', sk, unpack(f))
  end
  return gid, part
end

-- group_context(sess): the active group's context for job_assign `context_text` ('' when
-- there is no active group).
local function group_context(sess)
  local gid = sess.grp_id
  if not gid or gid == '' or NOW - tonumber(sess.grp_anchor or '0') > CFG.group_window then
    return ''
  end
  return (string.gsub(sess.grp_ctx or '', RS, '\n'))
end
