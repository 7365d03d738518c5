# Runs a program and compares its standard output with a file, line by line.
#   cmake -DCOMMAND="prog|arg|..." -DEXPECTED=file [-DENV="VAR=value|..."] [-DVERSION=x.y.z]
#         [-DSTDERR_REGEX=regex] [-DEXIT_CODE=n] -P run_and_compare.cmake
# "@VERSION@" in the expected file stands for VERSION. The environment is applied to the
# program only. Fails, printing both texts, on any difference.
cmake_minimum_required(VERSION 3.20)
string(REPLACE "|" ";" command "${COMMAND}")
string(REPLACE "|" ";" env "${ENV}")
if(NOT DEFINED EXIT_CODE)
  set(EXIT_CODE 0)
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -E env ${env} ${command}
                OUTPUT_VARIABLE actual ERROR_VARIABLE errors RESULT_VARIABLE rc
                TIMEOUT 120)
file(READ "${EXPECTED}" expected)
string(REPLACE "@VERSION@" "${VERSION}" expected "${expected}")
set(ok TRUE)
if(NOT rc STREQUAL "${EXIT_CODE}")
  message("exit status ${rc}, expected ${EXIT_CODE}")
  set(ok FALSE)
endif()
if(NOT actual STREQUAL expected)
  message("standard output differs from ${EXPECTED}")
  set(ok FALSE)
endif()
if(DEFINED STDERR_REGEX AND NOT errors MATCHES "${STDERR_REGEX}")
  message("standard error does not match: ${STDERR_REGEX}")
  set(ok FALSE)
endif()
if(NOT ok)
  message(FATAL_ERROR "--- expected ---\n${expected}--- actual ---\n${actual}--- stderr ---\n${errors}")
endif()
message(STATUS "output matches ${EXPECTED}")
