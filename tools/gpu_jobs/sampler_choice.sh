# Sourced. The sampler setting that tools/gpu_jobs/choose_sampler_options.sh writes to its choice
# file: "default", or a comma list of XLA options (R1JAX_SAMPLER_XLA_OPTIONS) with at most one
# item attention=xla|ragged (R1JAX_SAMPLER_ATTENTION).
#
#   source tools/gpu_jobs/sampler_choice.sh && export_choice FILE   # exports the setting FILE names

# split_choice SETTING: sets ATTENTION (xla unless named) and XLA_OPTS ("default" when SETTING
# names no XLA option: the library's own, r1jax.sampling.COMPILER_OPTIONS; '' is XLA's defaults).
split_choice() {
  local item items=() rest=()
  ATTENTION=xla
  XLA_OPTS=$1
  [[ $1 == default ]] && return 0
  IFS=',' read -r -a items <<< "$1"
  for item in "${items[@]}"; do
    case $item in
      attention=xla|attention=ragged) ATTENTION=${item#attention=};;
      attention=*) echo "sampler setting '$1': $item (expected attention=xla or attention=ragged)" >&2
                   return 2;;
      *) rest+=("$item");;
    esac
  done
  if (( ${#rest[@]} )); then XLA_OPTS=$(IFS=,; echo "${rest[*]}");
  elif [[ $1 == *attention=* ]]; then XLA_OPTS=default; fi
}

# export_choice FILE: exports R1JAX_SAMPLER_ATTENTION and R1JAX_SAMPLER_XLA_OPTIONS (unset for
# the library's own options) as FILE's setting says.
export_choice() {
  split_choice "$(cat "$1")" || return 2
  export R1JAX_SAMPLER_ATTENTION=$ATTENTION
  if [[ $XLA_OPTS == default ]]; then unset R1JAX_SAMPLER_XLA_OPTIONS
  else export R1JAX_SAMPLER_XLA_OPTIONS=$XLA_OPTS; fi
}
