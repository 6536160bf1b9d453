#!/usr/bin/env bash
# Kaldi/ESPnet-style command-line parser. Source it *after* the script has set its option
# variables to their defaults:
#
#     stage=1        # first stage to run
#     train_args=""  # extra arguments for training
#     . utils/parse_options.sh
#
# It consumes the leading options from the caller's "$@" and leaves the positional arguments:
#   --foo_bar VALUE, --foo-bar VALUE, --foo_bar=VALUE   set foo_bar (which must already exist)
#   --config FILE    sourced before every other option, wherever it appears (repeatable)
#   --help, -h       print $help_message and every option with its default, exit 0
#   --               end of options
# An unknown option is an error; a variable whose default is true/false only accepts true/false.
# All helper variables are prefixed __po_ and removed at the end (this runs in the caller's shell).

__po_caller=${BASH_SOURCE[1]:-}

__po_die() {
    echo "${__po_caller:-$0}: $*" >&2
    exit 1
}

# Print "  --name (default: "value")  # comment" for each `name=value` assignment written at the
# top level of the caller above the line that sources this file (heredoc bodies are skipped).
# Names starting with _ and ALL_CAPS names (SECONDS=0, ...) are internal and not listed.
__po_print_help() {
    if [ -n "${help_message:-}" ]; then
        echo "$help_message"
    else
        echo "Usage: ${__po_caller:-$0} [options] <args>"
    fi
    echo
    echo "Options (current default in parentheses):"
    local listed=0 line name comment
    if [ -n "$__po_caller" ] && [ -r "$__po_caller" ]; then
        while IFS=$'\t' read -r name comment; do
            declare -p "$name" >/dev/null 2>&1 || continue
            printf '  --%-24s (default: "%s")%s\n' "$name" "${!name}" "${comment:+  # $comment}"
            listed=$((listed + 1))
        done < <(awk '
            /^[ \t]*(\.|source)[ \t]+[^ \t]*parse_options\.sh/ { exit }
            heredoc != "" { t = $0; sub(/^\t+/, "", t); if (t == heredoc) heredoc = ""; next }
            /<<-?[ \t]*["'"'"']?[A-Za-z_]+/ {
                d = $0; sub(/.*<<-?[ \t]*["'"'"']?/, "", d); sub(/[^A-Za-z_0-9].*/, "", d); heredoc = d
            }
            /^[A-Za-z_][A-Za-z_0-9]*=/ {
                name = $0; sub(/=.*/, "", name)
                # not listed: help_message, private _names, ALL_CAPS shell/environment variables
                if (name == "help_message" || name ~ /^_/ || name !~ /[a-z]/ || name in seen) next
                seen[name] = 1
                comment = ""
                if (match($0, /[ \t]#[ \t]*/)) { comment = substr($0, RSTART + RLENGTH) }
                printf "%s\t%s\n", name, comment
            }' "$__po_caller")
    fi
    if [ "$listed" -eq 0 ]; then
        echo "  (no options found: could not read the calling script)"
    fi
    echo "  --config FILE               shell file with name=value defaults, sourced first"
    echo "  --help                      print this message"
}

# Pass 1: find --config files and --help among the leading options, without consuming anything.
__po_configs=()
__po_help=false
__po_args=("$@")
__po_i=0
while [ "$__po_i" -lt "${#__po_args[@]}" ]; do
    __po_arg=${__po_args[$__po_i]}
    case "$__po_arg" in
        --) break ;;
        --help | -h) __po_help=true ;;
        --config=*) __po_configs+=("${__po_arg#--config=}") ;;
        --config)
            [ $((__po_i + 1)) -lt "${#__po_args[@]}" ] || __po_die "option --config needs a file name"
            __po_i=$((__po_i + 1))
            __po_configs+=("${__po_args[$__po_i]}")
            ;;
        --*=*) ;;
        --*) __po_i=$((__po_i + 1)) ;;  # skip its value
        *) break ;;
    esac
    __po_i=$((__po_i + 1))
done

# Config files first, so that options given on the command line override them.
for __po_cfg in ${__po_configs[@]+"${__po_configs[@]}"}; do
    [ -r "$__po_cfg" ] || __po_die "cannot read config file '$__po_cfg' (given with --config)"
    # shellcheck disable=SC1090
    . "$__po_cfg" || __po_die "error while sourcing config file '$__po_cfg'"
done

if $__po_help; then
    __po_print_help
    exit 0
fi

# Pass 2: set the variables, consuming the options from the caller's positional parameters.
while [ $# -gt 0 ]; do
    case "$1" in
        --)
            shift
            break
            ;;
        --config=*)
            shift
            continue
            ;;
        --config)
            shift 2
            continue
            ;;
        --*=*)
            __po_opt=${1%%=*}
            __po_value=${1#*=}
            shift
            ;;
        --*)
            __po_opt=$1
            [ $# -ge 2 ] || __po_die "option $1 needs a value"
            __po_value=$2
            shift 2
            ;;
        *) break ;;
    esac
    __po_name=${__po_opt#--}
    __po_name=${__po_name//-/_}
    if ! [[ "$__po_name" =~ ^[A-Za-z_][A-Za-z_0-9]*$ ]] || ! declare -p "$__po_name" >/dev/null 2>&1; then
        __po_die "invalid option $__po_opt (unknown option; see --help)"
    fi
    case "${!__po_name}" in
        true | false)
            case "$__po_value" in
                true | false) ;;
                *) __po_die "option $__po_opt is boolean: its value must be true or false, not '$__po_value'" ;;
            esac
            ;;
    esac
    printf -v "$__po_name" '%s' "$__po_value"
done

unset __po_caller __po_configs __po_help __po_args __po_i __po_arg __po_cfg __po_opt __po_value __po_name
unset -f __po_die __po_print_help
true
