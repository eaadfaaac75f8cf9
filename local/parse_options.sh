#!/usr/bin/env bash
# Kaldi-style option parsing, to be sourced after the variables' defaults are set:
#   --foo-bar VALUE sets foo_bar=VALUE for every variable foo_bar that already exists.
# Unknown options are errors; --help prints the usage in $help_message (if set) and the options.
# Positional arguments are left in "$@".

while true; do
  [ -z "${1:-}" ] && break
  case "$1" in
    --help|-h)
      echo "${help_message:-}" >&2
      echo "Options (current values):" >&2
      for name in $(compgen -v); do
        case " ${option_names:-} " in *" $name "*) echo "  --${name//_/-} ${!name}" >&2;; esac
      done
      exit 0 ;;
    --*=*)
      echo "$0: use '--option value', not '--option=value': $1" >&2; exit 1 ;;
    --*)
      name=$(echo "$1" | sed 's/^--//; s/-/_/g')
      if [ -z "${!name+set}" ]; then
        echo "$0: unknown option $1" >&2; exit 1
      fi
      if [ $# -lt 2 ]; then
        echo "$0: option $1 needs a value" >&2; exit 1
      fi
      printf -v "$name" '%s' "$2"
      shift 2 ;;
    *) break ;;
  esac
done
