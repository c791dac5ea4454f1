# shardflow_target_options(<target>): warnings (as errors on our own targets only),
# and the sanitizer flags when SHARDFLOW_SANITIZE is ON.
#
# -fno-math-errno: no code of ours reads errno after a math call, and with errno semantics
# GCC must keep every sqrt scalar (a call path for negative inputs), which made the AdamW
# update 4x slower. The results are unchanged: sqrt is correctly rounded either way, and no
# other IEEE rule is relaxed (no -ffast-math, no contraction).
function(shardflow_target_options tgt)
  target_compile_options(${tgt} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow=local -Wno-unused-parameter -fno-math-errno>)
  if(SHARDFLOW_WERROR)
    target_compile_options(${tgt} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
    # GCC 12 with the sanitizers reports "may be used uninitialized" inside libstdc++'s own
    # <regex> (std::function moves in its NFA), code of ours untouched: a warning there, not an error
    if(SHARDFLOW_SANITIZE)
      target_compile_options(${tgt} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wno-error=maybe-uninitialized>)
    endif()
  endif()
endfunction()

if(SHARDFLOW_SANITIZE)
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined> $<$<COMPILE_LANGUAGE:CXX>:-fno-omit-frame-pointer>
                      $<$<COMPILE_LANGUAGE:CXX>:-fno-sanitize-recover=undefined>)
  add_link_options(-fsanitize=address,undefined)
endif()
