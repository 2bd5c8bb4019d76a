/* The part of the CBLAS interface librealn uses, for builds without OpenBLAS (REALN_BLAS=reference:
 * GPU check hosts with only a compiler and the NVIDIA stack). sgemm_ref.cpp implements it. */
#ifndef REALN_BLAS_REF_CBLAS_H
#define REALN_BLAS_REF_CBLAS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef int blasint;
typedef enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 } CBLAS_ORDER;
typedef enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112, CblasConjTrans = 113 } CBLAS_TRANSPOSE;

void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, blasint m, blasint n,
                 blasint k, float alpha, const float* a, blasint lda, const float* b, blasint ldb, float beta,
                 float* c, blasint ldc);
void openblas_set_num_threads(int n);
/* "reference": the kernel set in use (OpenBLAS names its core type here). */
char* openblas_get_corename(void);

#ifdef __cplusplus
}
#endif

#endif
