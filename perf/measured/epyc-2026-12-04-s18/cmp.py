import json,sys,os
a_dir,b_dir=sys.argv[1],sys.argv[2]
for n in sorted(os.listdir(a_dir)):
    if not n.endswith('.json'): continue
    try:
        a=json.load(open(os.path.join(a_dir,n))); b=json.load(open(os.path.join(b_dir,n)))
    except Exception as e:
        print(n,'ERR',e); continue
    ex=lambda d,k: d['exposed_comm_s'].get(k,0)
    keys=set(a['exposed_comm_s'])|set(b['exposed_comm_s'])
    print(f"{n:22s} {a['mesh'][:34]:34s} tasks {a['step_time_s']:10.5g} blocks {b['step_time_s']:10.5g} ({b.get('replay')}) err {100*(b['step_time_s']/a['step_time_s']-1):+6.2f}%  bubble {a['bubble_fraction']:.3f}/{b['bubble_fraction']:.3f} mem {'=' if a['memory_bytes_per_device']==b['memory_bytes_per_device'] else 'DIFF'} time {a['compile_s']+a['simulate_s']:.4f}/{b['compile_s']+b['simulate_s']:.4f} exp " + " ".join(f"{k}:{ex(a,k):.3g}/{ex(b,k):.3g}" for k in sorted(keys)))
