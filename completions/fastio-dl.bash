
_fastio_dl_completion() {
    local IFS=$'
'
    COMPREPLY=( $( env COMP_WORDS="${COMP_WORDS[*]}" \
                   COMP_CWORD=$COMP_CWORD \
                   _FASTIO_DL_COMPLETE=complete_bash $1 ) )
    return 0
}

complete -o default -F _fastio_dl_completion fastio-dl

