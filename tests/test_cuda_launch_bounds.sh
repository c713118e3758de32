#!/bin/sh
# Every CUDA kernel declares __launch_bounds__ with the largest block it
# is launched with. Without it nvcc may give a kernel up to 255 registers
# a thread, and a launch of more threads than the register file then
# holds (65536 registers: 1024 threads at 64 each) fails on the GPU with
# "too many resources requested for launch" -- something neither the
# compiler nor the CPU emulator reports. A source check, so it runs in
# every build, GPU or not.
status=0
for f in "$top_srcdir"/backends/cuda/*.cu "$top_srcdir"/backends/cuda/*.cuh; do
    awk -v file="${f#"$top_srcdir"/}" '
        /^[ \t]*(\/\*|\*|\/\/)/ { next }       # comment lines
        /__global__/ && !/__launch_bounds__/ {
            printf "%s:%d: a kernel without __launch_bounds__: %s\n", file, FNR, $0
            bad = 1
        }
        END { exit bad }' "$f" || status=1
done
kernels=$(cat "$top_srcdir"/backends/cuda/*.cu "$top_srcdir"/backends/cuda/*.cuh |
          grep -c '__global__ void __launch_bounds__')
if [ "$kernels" -lt 20 ]; then
    echo "found only $kernels bounded kernels in backends/cuda: is top_srcdir ($top_srcdir) right?"
    status=1
fi
[ $status -eq 0 ] && echo "PASS: all $kernels kernels in backends/cuda declare __launch_bounds__"
exit $status
