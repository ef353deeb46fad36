; Test fixture: a loop-free gfx90a kernel (one MFMA, no branches back); negative control for loop detection.
; Built into straight_gfx90a.hsaco by regen.sh.
target triple = "amdgcn-amd-amdhsa"

declare <4 x float> @llvm.amdgcn.mfma.f32.16x16x16bf16.1k(<4 x i16>, <4 x i16>, <4 x float>, i32, i32, i32)
declare i32 @llvm.amdgcn.workitem.id.x()

define amdgpu_kernel void @straight(ptr addrspace(1) noalias %a, ptr addrspace(1) noalias %c, float %scale) #0 {
entry:
  %tid = call i32 @llvm.amdgcn.workitem.id.x()
  %tid64 = zext i32 %tid to i64
  %pa = getelementptr <4 x i16>, ptr addrspace(1) %a, i64 %tid64
  %va = load <4 x i16>, ptr addrspace(1) %pa, align 8
  %acc = call <4 x float> @llvm.amdgcn.mfma.f32.16x16x16bf16.1k(<4 x i16> %va, <4 x i16> %va, <4 x float> zeroinitializer, i32 0, i32 0, i32 0)
  %s = insertelement <4 x float> poison, float %scale, i32 0
  %ss = shufflevector <4 x float> %s, <4 x float> poison, <4 x i32> zeroinitializer
  %r = fmul <4 x float> %acc, %ss
  %pc = getelementptr <4 x float>, ptr addrspace(1) %c, i64 %tid64
  store <4 x float> %r, ptr addrspace(1) %pc, align 16
  ret void
}

attributes #0 = { "amdgpu-flat-work-group-size"="1,64" }
