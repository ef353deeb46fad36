; Test fixture: a small gfx942 kernel with an MFMA accumulation loop and an LDS array.
; Built into mfma_loop_gfx942.hsaco by regen.sh; the runtime/compiler tests read the .hsaco.
target datalayout = "e-p:64:64-p1:64:64-p2:32:32-p3:32:32-p4:64:64-p5:32:32-p6:32:32-p7:160:256:256:32-p8:128:128:128:48-p9:192:256:256:32-i64:64-v16:16-v24:32-v32:32-v48:64-v96:128-v192:256-v256:256-v512:512-v1024:1024-v2048:2048-n32:64-S32-A5-G1-ni:7:8:9"
target triple = "amdgcn-amd-amdhsa"

@lds = internal addrspace(3) global [256 x <4 x i16>] poison, align 16

declare <4 x float> @llvm.amdgcn.mfma.f32.16x16x16bf16.1k(<4 x i16>, <4 x i16>, <4 x float>, i32, i32, i32)
declare i32 @llvm.amdgcn.workitem.id.x()
declare void @llvm.amdgcn.s.barrier()

define amdgpu_kernel void @mfma_loop(ptr addrspace(1) noalias %a, ptr addrspace(1) noalias %b, ptr addrspace(1) noalias %c, i32 %n) #0 {
entry:
  %tid = call i32 @llvm.amdgcn.workitem.id.x()
  %tid64 = zext i32 %tid to i64
  %cmp0 = icmp sgt i32 %n, 0
  br i1 %cmp0, label %loop, label %exit

loop:
  %i = phi i32 [ 0, %entry ], [ %i.next, %loop ]
  %acc = phi <4 x float> [ zeroinitializer, %entry ], [ %acc2, %loop ]
  %i64 = zext i32 %i to i64
  %off = mul i64 %i64, 256
  %idx = add i64 %off, %tid64
  %pa = getelementptr <4 x i16>, ptr addrspace(1) %a, i64 %idx
  %va = load <4 x i16>, ptr addrspace(1) %pa, align 8
  %pb = getelementptr <4 x i16>, ptr addrspace(1) %b, i64 %idx
  %vb = load <4 x i16>, ptr addrspace(1) %pb, align 8
  %pl = getelementptr [256 x <4 x i16>], ptr addrspace(3) @lds, i32 0, i32 %tid
  store <4 x i16> %vb, ptr addrspace(3) %pl, align 8
  call void @llvm.amdgcn.s.barrier()
  %tid2 = xor i32 %tid, 1
  %pl2 = getelementptr [256 x <4 x i16>], ptr addrspace(3) @lds, i32 0, i32 %tid2
  %vl = load <4 x i16>, ptr addrspace(3) %pl2, align 8
  %acc1 = call <4 x float> @llvm.amdgcn.mfma.f32.16x16x16bf16.1k(<4 x i16> %va, <4 x i16> %vl, <4 x float> %acc, i32 0, i32 0, i32 0)
  %acc2 = call <4 x float> @llvm.amdgcn.mfma.f32.16x16x16bf16.1k(<4 x i16> %vb, <4 x i16> %va, <4 x float> %acc1, i32 0, i32 0, i32 0)
  call void @llvm.amdgcn.s.barrier()
  %i.next = add nuw nsw i32 %i, 1
  %done = icmp eq i32 %i.next, %n
  br i1 %done, label %exit, label %loop

exit:
  %res = phi <4 x float> [ zeroinitializer, %entry ], [ %acc2, %loop ]
  %pc = getelementptr <4 x float>, ptr addrspace(1) %c, i64 %tid64
  store <4 x float> %res, ptr addrspace(1) %pc, align 16
  ret void
}

attributes #0 = { "amdgpu-flat-work-group-size"="1,256" }
