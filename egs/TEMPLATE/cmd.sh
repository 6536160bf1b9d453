# Job runners used by xytok.sh:  $cmd [--gpu N --mem M --num_threads T --max_jobs_run K] JOB=1:N log.JOB.log command
#   train_cmd  : CPU jobs (data stages)      cuda_cmd : training (gets --gpu $ngpu)
#   decode_cmd : CPU inference / scoring     (stages 7-8 use "cuda_cmd --gpu 1" with --gpu_inference true)
# Choose the backend here or with XYTOK_CMD_BACKEND=local|stdout|slurm.
cmd_backend=${XYTOK_CMD_BACKEND:-local}

case "$cmd_backend" in
    local)   # parallel jobs on this machine
        export train_cmd="utils/run.pl"
        export cuda_cmd="utils/run.pl"
        export decode_cmd="utils/run.pl" ;;
    stdout)  # like local, but job output also goes to the terminal
        export train_cmd="utils/stdout.pl"
        export cuda_cmd="utils/stdout.pl"
        export decode_cmd="utils/stdout.pl" ;;
    slurm)   # sbatch; options are mapped to sbatch flags by conf/slurm.conf (e.g. --gpu N -> --gres=gpu:N)
        export train_cmd="utils/slurm.pl --config conf/slurm.conf"
        export cuda_cmd="utils/slurm.pl --config conf/slurm.conf"
        export decode_cmd="utils/slurm.pl --config conf/slurm.conf" ;;
    *) echo "cmd.sh: unknown cmd_backend '$cmd_backend' (local, stdout or slurm)" >&2; return 1 ;;
esac
